"""The output tree: atomic files, PNG metadata chunks, contact sheets, safe names, and the
manifest model (``manifest.Manifest``, its one writer and one reader, the skip check).

Nothing here knows about inboxes, jobs or models: tasks hand it plain values.
"""
