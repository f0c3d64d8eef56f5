"""entropi.common: the plumbing every layer uses, importable with numpy alone.

- :mod:`.provenance`: the installed entropi version and what a result records about the machine
  and the libraries it ran with (one function, :func:`~.provenance.provenance`, for every layer).
"""
