"""Training masklet's SAM 2 model on masklet shards: the next round of the data engine."""
