"""Exchange wire codecs: one pure module per exchange (frames in, events out; requests built)."""
