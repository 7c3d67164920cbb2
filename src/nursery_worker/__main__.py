"""``python -m nursery_worker`` runs the CLI."""

from ._cli import main

main()
