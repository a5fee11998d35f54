"""camcli: class activation maps and weakly-supervised boxes (Zhou et al., CVPR 2016) for folders of images."""

__version__ = "0.1.0"
