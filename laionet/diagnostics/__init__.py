"""Section 4 diagnostics: why LAIONet differs from ImageNet.

``selection_frequency`` (4.1, Fig. 8): intra-class comparisons against ImageNetV2 versions collected against their
MTurk selection frequency; ``text_alone`` (4.2, Fig. 9): each labelled caption's similarity to its own synset and the
share of other classes more similar; ``filtered`` (Appendix D): image+text-filtered variants of equal size. Reads the
catalog, caption sets, intra-class outputs, the selection's candidate index and image scores; writes tables under
``diagnose/`` with manifests. Pure numpy/pandas; text encoders come from ``laionet.selection.encoders``.
"""
