"""Metrics computed exactly as the reference implementations compute them (FID/KID, detection, instance, paired).

The package is split along three seams, so the same scoring code serves files (``histostain evaluate ...``) and
arrays (the pipeline, per tile), and reading inputs never mixes with maths:

==========================  ================================================================================
pure functions (arrays)     ``fid`` (statistics, Fréchet distance, KID), ``detection`` (centroid matching,
                            P/R/F1, CoNIC per-class; ``DetectionScorer`` / ``score_detection``), ``instance``
                            (Dice, AJI, AJI+, DQ, SQ, PQ; ``InstanceScorer`` / ``score_instances``),
                            ``pannuke`` (mPQ/bPQ protocol), ``paired`` (PSNR, SSIM, MS-GMSD, MDSI, HaarPSI, ...)
networks and features       ``inception`` (the FID-Inception network and its weights), ``fid_features``
                            (image files -> pool3 features, DataLoader workers, the worker policy)
inputs (files -> arrays)    ``instance_sources`` (label TIFFs, hover_net ``.mat``, PanNuke ``.npy``),
                            ``detection_sources`` (centroid txt, hover_net JSON, GeoJSON, CSV, prepared
                            EndoNuke), ``pairing`` (ground truth <-> prediction by file stem, for every service)
services (one per command)  ``evaluate_fid`` (FID, KID, statistics files), ``evaluate_celldet``,
                            ``evaluate_instance`` (hover_net and PanNuke protocols), ``evaluate_paired``
shared                      ``report`` (``EvaluationResult``, the one result shape, with its provenance
                            record; ``--out DIR`` files and their up-front check), ``splits`` (which split of
                            prepared data every service reads), ``defaults`` (the services' defaults,
                            importable without numpy/torch)
==========================  ================================================================================

Services take file paths and a ``provenance`` record and return an ``EvaluationResult``; the array-level scorers
(``DetectionScorer``, ``InstanceScorer``) take one image at a time with ``add(name, true, pred)`` and return the
same ``EvaluationResult`` from ``result()``. The detection and hover_net instance services are built on those
scorers: they read files and feed arrays, so there is one scoring path.
"""
