"""The block-decoding view lays each position where block decoding put it."""

import numpy as np
import pytest

from workbench.sampling.block import BlockOutput
from workbench.viz.blocks import block_commit_figure, block_commit_table


def _output():
    # one example, 2 blocks of 3; EOS (id 1) at position 4 stops it: position 5 is padding
    return BlockOutput(tokens=np.array([[7, 8, 9, 5, 1, 0]]), lengths=np.array([5]),
                       probs=np.array([[0.9, 0.5, 0.25, 0.75, 0.6, 0.0]]),
                       commit_step=np.array([[0, 2, 1, 0, 1, -1]]), blocks_run=np.array(2),
                       forward_passes=np.array(6))


def test_table_and_figure_place_each_position_in_its_block():
    table = block_commit_table(_output(), 0, 3, label=lambda t: f"t{t}")
    assert table.shape == (2, 3)
    assert table.iloc[0, 1] == "t8 @2 (p=0.50)"
    assert table.iloc[1, 0] == "t5 @0 (p=0.75)"
    assert table.iloc[1, 2] == ""  # padding after EOS
    fig = block_commit_figure(_output(), 0, 3)
    z = np.asarray(fig.data[0].z, dtype=float)
    np.testing.assert_array_equal(z[0], [0.9, 0.5, 0.25])
    assert np.isnan(z[1, 2]) and fig.data[0].text[1][1] == "1<br>s1"


def test_block_size_that_does_not_tile_the_canvas_is_refused():
    with pytest.raises(ValueError, match="block_size=4"):
        block_commit_table(_output(), 0, 4)
