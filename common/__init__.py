"""entropi.common: the plumbing every layer uses, importable with numpy alone.

- :mod:`.errors`: :class:`~.errors.EntropiError`, the root of every error entropi raises on bad
  input, and how both CLIs print errors (one line, control characters escaped, SIGTERM).
- :mod:`.files`: atomic writes and real folders (nothing written through a link).
- :mod:`.lock`: one writer per output folder.
- :mod:`.dtypes`: the encoder's dtypes (float32, int8), what ``quantize`` may be, the one
  translation between the two spellings, and the int8 files' default ``min_cosine``.
- :mod:`.provenance`: the installed entropi version and what a result records about the machine
  and the libraries it ran with (one function, :func:`~.provenance.provenance`, for every layer).
- :mod:`.cliargs`: CLI flags generated from a dataclass's fields (both CLIs).
"""
