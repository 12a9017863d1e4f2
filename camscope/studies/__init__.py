"""Studies with a known answer: generated scenes with known object masks and the small CNN / ViT
trained on them in seconds (:mod:`~camscope.studies.synthetic`,
:mod:`~camscope.studies.synthetic_vit`), the synthetic localisation benchmark
(:mod:`~camscope.studies.benchmark`, ``camscope bench synthetic``) and the parameter-randomisation
sanity check (:mod:`~camscope.studies.randomization`, ``camscope sanity``)."""
