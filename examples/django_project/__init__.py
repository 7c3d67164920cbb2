"""A minimal Django project that enqueues nursery-worker jobs in its ORM transactions.

See docs/integrations/django.md; ``python -m examples.django_project`` runs it end to end.
"""
