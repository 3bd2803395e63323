"""klteach: self-supervised learning by clustering, as a course that runs.

Modules, in the order of the paper:

- :mod:`klteach.theory`      equations (1)-(23) as small tensor functions
- :mod:`klteach.normalisers` the teachers: none, inverse-prior, centering, batchnorm, sinkhorn
- :mod:`klteach.models`      MLP, small CNN, ResNet-18 (CIFAR), projection head, prototypes
- :mod:`klteach.data`        toy sphere, digits, CIFAR-10 (archive, image folder, shipped sample)
- :mod:`klteach.augment`     batched augmentation on the tensor's own device
- :mod:`klteach.loss`        the cross-view loss (3)/(11) and the student's log p (6)
- :mod:`klteach.train`       the student/teacher loop: :meth:`Trainer.train_step` is one step
- :mod:`klteach.metrics`     collapse diagnostics, kNN accuracy, NMI/ARI

Around the loop:

- :mod:`klteach.config`      every setting of a run (:class:`TrainConfig`): help, kind, range
- :mod:`klteach.evaluation`  embeddings, the whole-set prior (15), one evaluation row
- :mod:`klteach.run`         a whole run: evaluations, its files, a clean stop
- :mod:`klteach.checkpoint`  run files written atomically, checkpoints, resume
- :mod:`klteach.interrupts`  Ctrl-C and SIGTERM wait for the step boundary
- :mod:`klteach.dist`        ``torchrun``: global-batch statistics over processes
"""
__version__ = "0.1.0"
