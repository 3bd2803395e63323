"""klteach: self-supervised learning by clustering, as a course that runs.

Modules, in the order of the paper:

- :mod:`klteach.theory`      equations (1)-(23) as small tensor functions
- :mod:`klteach.normalisers` the teachers: none, inverse-prior, centering, batchnorm, sinkhorn
- :mod:`klteach.models`      MLP, small CNN, ResNet-18 (CIFAR), projection head, prototypes
- :mod:`klteach.data`        toy sphere, digits, CIFAR-10 (archive, image folder, shipped sample)
- :mod:`klteach.augment`     batched augmentation on the tensor's own device
- :mod:`klteach.train`       the student/teacher loop (:class:`Trainer`)
- :mod:`klteach.metrics`     collapse diagnostics, kNN accuracy, NMI/ARI
"""
__version__ = "0.1.0"
