"""Gallery -> index directory: the builder and the reader that own the on-disk format."""
