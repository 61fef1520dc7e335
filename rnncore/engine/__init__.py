"""The engine: everything between the layers and the compiled core.

    rnncore/_kernels.pyx   the compiled core (the scan, each cell's step; its public nogil API in
                           _kernels.pxd), beside this package at the path the build fixes
    engine/cells.py        the cells' adapters: the workspace each keeps, the weight gradients after
                           the backward scan
    engine/config.py       the one configuration (rnncore.config_context): which path the core takes
    engine/threads.py      rnncore's thread count, and BLAS kept on one thread inside its calls
    engine/validation.py   every check of the Python boundary, once

Internal: the public names are the ones rnncore re-exports.
"""
