"""Image region extractors: an image in, K region vectors and their boxes out."""
