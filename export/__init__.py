"""edgevid_export: the torch + transformers side of edgevid (installed with the ``export`` extra).

Turns a Gemma 4 checkpoint into the model folder described in docs/ARCHITECTURE.md. The runtime package
``edgevid`` never imports this package.
"""
