"""Every figure layerprobe draws, in one package that never imports torch.

- :mod:`~layerprobe.plot.style`: the style (theme, labels and units, colour scales, captions, formats, layout check);
- :mod:`~layerprobe.plot.heatmaps`: layer x step and layer x module heatmaps of records (training and diffs);
- :mod:`~layerprobe.plot.probes`: the probes over training steps under the per-layer drift (one step axis);
- :mod:`~layerprobe.plot.study`: sweep results as factorial facets with intervals, paired differences;
- :mod:`~layerprobe.plot.effects`: causal attribution bars and layer x block heatmaps (attribution, relate).
"""

import matplotlib

matplotlib.use("Agg")  # before any submodule imports pyplot: figures are files, never windows

from layerprobe.plot.heatmaps import BLOCK_ORDER, heatmap_layer_module, heatmap_layer_step, plot_run  # noqa: F401
from layerprobe.plot.probes import probe_figure  # noqa: F401
from layerprobe.plot.style import figure_formats, label, layout_problems, quantity, save_figure  # noqa: F401
