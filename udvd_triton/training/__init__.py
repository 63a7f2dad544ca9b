"""Training pipeline: settings (``config``), offline data preparation (``data``), online degradation synthesis
(``synth``), the LR schedule (``schedule``), the run folder (``run_folder``), the training loop (``trainer``:
``train``, ``resume``) and the ``udvd`` training commands (``cli``). Nothing is imported here, so registering the
commands with the command line does not load the trainer."""
