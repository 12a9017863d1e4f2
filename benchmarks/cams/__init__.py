"""The code of ``benchmarks/bench_cams.py`` (camscope vs pytorch-grad-cam), one module per job:

- ``common``: the one timing and reporting helper (also used by ``batch_sweep.py``);
- ``camscope_api``: every camscope name the benchmarks use;
- ``context``: the shared state of a run (``Bench``: arguments, model, photos, tables), with
  ``pgc`` (pytorch-grad-cam's runs), ``runner`` (camscope's) and ``naive_scorecam``;
- ``sections``: one module per ``--sections`` name, registered with ``@section``;
- ``cli``: the command line and the loop over the sections.
"""
