"""Django's command-line utility for the example project.

python examples/django_project/manage.py migrate
python examples/django_project/manage.py nursery_worker run --app examples.django_project.jobs:app
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `examples.`
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
