"""Autograd Functions over the Triton launchers, one module per operation.

Each module validates its arguments, registers its launchers as ``torch.library`` custom ops (so
``torch.compile(fullgraph=True)`` sees one opaque node instead of breaking the graph) and defines
a ``torch.autograd.Function``. Ops know nothing of modules.
"""
