"""streamrec's composition root: the `streamrec` command line and the demo."""

__version__ = "0.1.0"
