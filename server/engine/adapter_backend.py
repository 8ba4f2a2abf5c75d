"""Loads adapter-set versions into the engine's workers and tags requests so the workers route them.

Contract used by the router:
- `await backend.load(slot, set_dir)` puts one validated adapter-set version into every worker under
  `slot` (an int never reused) and returns the bytes it occupies there.
- `await backend.unload(slot)` frees it; callers guarantee no running request still uses the slot.
- `request_routing(target)` gives the `SamplingParams.extra_args` and `cache_salt` for a request.
"""
