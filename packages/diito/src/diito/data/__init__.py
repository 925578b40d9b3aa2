"""Data pipeline: binarized token files (npz, never pickles), token counts, the paired dataset, batching."""
