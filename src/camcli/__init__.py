"""camcli: class activation maps and weakly-supervised boxes (Zhou et al., CVPR 2016)."""

__version__ = "0.1.0"
