"""Bytes in and out: storage, RLE, video encoding and decoding, SA-V annotations."""
