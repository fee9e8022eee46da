"""``python -m streamrec`` = the ``streamrec`` console script."""

from streamrec.cli import main

main()
