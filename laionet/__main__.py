"""``python -m laionet`` runs the command line."""

from laionet.cli import main

main()
