"""What a fit learned, shown: the t-SNE map, galleries and figures (``build``, ``plots``) and every page written
to a file (``pages``; HTML lives in that module alone).

Imports everything up to ``fit`` and ``evaluate``; never serving or the command line.
"""
