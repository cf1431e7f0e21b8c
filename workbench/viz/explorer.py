"""An interactive denoising explorer: widgets driving the trajectory figure in a notebook.

A step slider, a sample picker, a prompt picker and a text box for a new prompt update a
plotly `FigureWidget` in place (inside `batch_update`, one redraw per change). The
callbacks are plain methods on `DenoisingExplorer`, so they run without a browser: set
`explorer.step.value` and read `explorer.figure.data[0].z`.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Callable, Optional, Sequence

import jax
import plotly.graph_objects as go

from workbench.data.special import diffusion_ids
from workbench.objectives.batch import seq2seq_batch
from workbench.sampling.diffusion import diffusion_sample
from workbench.viz.trajectory import Trajectory, figure_at, trajectory_from_output

Decode = Callable[[str, Optional[str], int], Trajectory]  # (prompt, reference or None, example id) -> trajectory


class ModelDecoder:
    """Denoise one prompt at a time with `diffusion_sample` (batch of one: one compilation for every prompt)."""

    def __init__(self, model, tokenizer, config, *, input_len: int, target_len: int, seed: int = 0):
        self.model, self.tokenizer = model, tokenizer
        self.config = dataclasses.replace(config, **diffusion_ids(tokenizer, config.process, model.config.vocab_size))
        self.input_len, self.target_len, self.seed = input_len, target_len, seed

    def __call__(self, prompt: str, reference: Optional[str], example_id: int) -> Trajectory:
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise ValueError("the prompt is empty; type some text first")
        if len(ids) > self.input_len:
            raise ValueError(f"the prompt has {len(ids)} tokens but input_len={self.input_len}; shorten it "
                             f"or raise input_len")
        batch = seq2seq_batch([ids], [[]], input_len=self.input_len, target_len=self.target_len,
                              pad_id=self.tokenizer.pad_id, example_ids=[example_id], pad_targets=True)
        output = diffusion_sample(self.model, batch, self.config, jax.random.key(self.seed))
        return trajectory_from_output(output, self.tokenizer, 0, prompt=prompt, reference=reference)


def decode_trajectories(model, tokenizer, examples: Sequence[tuple[str, Optional[str]]], config, *, input_len: int,
                        target_len: int, seed: int = 0) -> list[Trajectory]:
    """The denoising trajectory of each (prompt, reference) pair, decoded in one batch
    (example ids 0, 1, ...: the same trajectories `ModelDecoder` gives one at a time)."""
    decoder = ModelDecoder(model, tokenizer, config, input_len=input_len, target_len=target_len, seed=seed)
    ids = [tokenizer.encode(prompt) for prompt, _ in examples]
    batch = seq2seq_batch(ids, [[] for _ in ids], input_len=input_len, target_len=target_len,
                          pad_id=tokenizer.pad_id, example_ids=list(range(len(ids))), pad_targets=True)
    output = diffusion_sample(model, batch, decoder.config, jax.random.key(seed))
    return [trajectory_from_output(output, tokenizer, i, prompt=p, reference=r) for i, (p, r) in enumerate(examples)]


class DenoisingExplorer:
    """Widgets over `figure_at`: pick a prompt, a sample and a step; or type a new prompt."""

    def __init__(self, decode: Decode, prompts: Sequence[str], references: Optional[Sequence[Optional[str]]] = None):
        import ipywidgets as widgets

        if not prompts:
            raise ValueError("DenoisingExplorer needs at least one prompt")
        references = [None] * len(prompts) if references is None else list(references)
        if len(references) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(references)} references; pass one per prompt "
                             f"(None where there is none)")
        self._decode = decode
        self.prompts, self.references = list(prompts), references
        self._trajectories: dict[int, Trajectory] = {}
        self._syncing = False
        traj = self.trajectory(0)
        self.figure = go.FigureWidget(figure_at(traj))
        self.prompt = widgets.Dropdown(options=self._prompt_options(), value=0, description="prompt",
                                       layout=widgets.Layout(width="600px"))
        self.sample = widgets.Dropdown(options=self._sample_options(traj), value=traj.chosen, description="sample")
        self.step = widgets.IntSlider(value=traj.num_steps, min=0, max=traj.num_steps, description="step",
                                      continuous_update=True)
        self.new_prompt = widgets.Text(placeholder="a new prompt", description="new prompt",
                                       layout=widgets.Layout(width="600px"))
        self.denoise = widgets.Button(description="Denoise")
        self.status = widgets.HTML(value="")
        self.prompt.observe(self._on_prompt, names="value")
        self.sample.observe(self._on_view, names="value")
        self.step.observe(self._on_view, names="value")
        self.denoise.on_click(self._on_denoise)
        self.widget = widgets.VBox([
            widgets.HBox([self.prompt, self.sample]), self.step,
            widgets.HBox([self.new_prompt, self.denoise]), self.status, self.figure,
        ])  # fmt: skip

    @classmethod
    def from_model(cls, model, tokenizer, prompts: Sequence[str], *, config, input_len: int, target_len: int,
                   references: Optional[Sequence[Optional[str]]] = None, seed: int = 0) -> "DenoisingExplorer":
        decoder = ModelDecoder(model, tokenizer, config, input_len=input_len, target_len=target_len, seed=seed)
        return cls(decoder, prompts, references)

    def trajectory(self, index: int) -> Trajectory:
        """Prompt `index`'s trajectory, decoded on first use (its example id is its index)."""
        if index not in self._trajectories:
            self._trajectories[index] = self._decode(self.prompts[index], self.references[index], index)
        return self._trajectories[index]

    @property
    def current(self) -> Trajectory:
        return self.trajectory(self.prompt.value)

    def _prompt_options(self) -> list[tuple[str, int]]:
        def label(i: int, text: str) -> str:
            flat = " ".join(text.split())
            return f"{i}: {flat[:80]}{'…' if len(flat) > 80 else ''}"

        return [(label(i, p), i) for i, p in enumerate(self.prompts)]

    @staticmethod
    def _sample_options(traj: Trajectory) -> list[tuple[str, int]]:
        return [(f"{s} (score {traj.scores[s]:.3f}{', chosen' if s == traj.chosen else ''})", s)
                for s in range(traj.num_samples)]

    def redraw(self) -> None:
        """Copy the data of `figure_at(current, sample, step)` into the widget's traces."""
        new = figure_at(self.current, self.sample.value, self.step.value)
        if len(new.data) != len(self.figure.data):
            raise RuntimeError(f"the figure has {len(self.figure.data)} traces but the new view has {len(new.data)}; "
                               f"all prompts must be decoded with the same number of samples")
        with self.figure.batch_update():
            for target, source in zip(self.figure.data, new.data):
                target.update({k: v for k, v in source.to_plotly_json().items() if k != "type"})
            self.figure.layout.title.text = new.layout.title.text
            self.figure.layout.height = new.layout.height

    def _on_view(self, change) -> None:
        if not self._syncing:
            self.redraw()

    def _on_prompt(self, change) -> None:
        traj = self.current
        self._syncing = True
        try:
            self.step.max = traj.num_steps
            self.step.value = traj.num_steps
            self.sample.options = self._sample_options(traj)
            self.sample.value = traj.chosen
        finally:
            self._syncing = False
        self.redraw()

    def _on_denoise(self, _widget) -> None:
        text = self.new_prompt.value
        try:
            traj = self._decode(text, None, len(self.prompts))
        except ValueError as error:
            self.status.value = f"<span style='color:#b00'>{html.escape(str(error))}</span>"
            return
        self._trajectories[len(self.prompts)] = traj
        self.prompts.append(text)
        self.references.append(None)
        self.prompt.options = self._prompt_options()
        self.prompt.value = len(self.prompts) - 1  # fires _on_prompt
        self.status.value = f"denoised prompt {len(self.prompts) - 1}: {html.escape(traj.texts[traj.chosen][-1][:200])}"

