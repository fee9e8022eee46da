"""streamrec's composition root: the `streamrec` command line and what only it runs.

``cli`` (every command), ``demo``, ``train`` (the training chain), ``evaluate``
(the evaluate command's tables), ``pipeline_bench`` (``bench pipeline``) and
``ui`` (the live page). The top layer: it may import every package, and no
package imports it (``tests/unit/test_layers.py``).
"""

__version__ = "0.1.0"
