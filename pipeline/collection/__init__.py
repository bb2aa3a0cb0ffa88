"""A collection kept in step with its folders (add, sync, remove without retraining) and its copies found:
candidate pairs (the index, visual words), verification on the pixels, the copy to keep, the no-fit folder mode,
and scores against a person's labelled copies.

Imports everything up to ``search`` but ``search`` itself; never ``fit``, the report, serving or the command line.
"""
