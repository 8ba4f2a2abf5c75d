"""A toy adapter method for the plug-in test: a per-task additive bias, y = x Wᵀ + s·b[t].

It lives outside the repository's method folders and is found only through a temporary distribution's
`orthoserve.methods` entry point; its spec is `method.METHOD`.
"""
