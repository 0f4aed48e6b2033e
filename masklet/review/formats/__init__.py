"""The files of the annotation tools masklet review writes and reads: CVAT XML 1.1 and Label Studio JSON."""
