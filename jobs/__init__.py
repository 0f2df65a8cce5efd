"""Ray Data entry points for bulk work (ingest, reorganise, re-embed) over memos_ray."""
