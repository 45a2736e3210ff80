"""Sampling: time grids (``grids``), the samplers (``ancestral``, ``stochastic``, ``ode``,
``multistep``, ``flow``; one record each in ``registry``), shared step helpers (``common``),
external networks (``external``), guidance as denoiser wrappers (``guidance``), completion and
editing (``completion``), the chunked sampling loop (``generate``) and grid optimisation
(``gridopt``). Import from the modules; this package imports nothing."""
