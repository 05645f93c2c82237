"""Streaming inference for forward-only DeepSpeech2 models (DS2 §3.7, §7).

Audio (or feature) chunks go in, partial greedy transcripts come out, and the final transcript is
the offline transcript of the same audio: every stage emits only outputs that no later input can
change, and keeps exactly the context it still needs.

* :class:`StreamingFeaturizer` -- samples -> feature frames. A centred STFT frame is final once its
  window lies inside the received audio (frames near the end wait for the zero padding of
  :meth:`finish`). Each call re-featurizes only the recent audio, from a hop-aligned point far
  enough back that pre-emphasis and the window see the same samples as offline. Needs causal
  feature normalisation (``normalize="global"`` with training-set statistics, DS2 §7, or ``"none"``);
  dither is off in eval mode.
* :class:`StreamingDeepSpeech2` -- feature frames -> logits, in eval mode:
  each 2D conv keeps the frames its next output still needs (starting with its left zero padding;
  the right padding is appended by :meth:`finish`), each recurrent layer keeps its hidden state,
  and the lookahead (row) convolution keeps its last ``tau`` frames and waits for ``tau`` future ones.
* :class:`StreamingTranscriber` -- both, plus CTC greedy decoding carried across chunk boundaries.

All shapes are single-utterance: features (F, T), logits (T', V).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zoo.speech.deepspeech2 import DeepSpeech2, State
from zoo.speech.features import Featurizer


class StreamingFeaturizer:
    """Incremental :class:`~zoo.speech.features.Featurizer` (eval mode, causal normalisation).

    ``accept(samples (S,)) -> features (F, t)`` of the frames that became final;
    ``finish() -> features (F, t)`` of the rest. Together they equal ``featurizer(all samples)``.
    """

    def __init__(self, featurizer: Featurizer) -> None:
        if featurizer.config.normalize not in ("global", "none"):
            raise ValueError(
                f"streaming needs causal feature normalisation (normalize='global' with training-set statistics "
                f"or 'none'), got normalize={featurizer.config.normalize!r}"
            )
        self.featurizer = featurizer.eval()
        self.hop = featurizer.hop_length
        self.half_window = featurizer.n_fft // 2
        # frames of a re-featurized segment starting at sample a are exact from this index on:
        # their window starts after a, so pre-emphasis has the predecessor of every sample it uses
        self.margin = math.ceil((self.half_window + 1) / self.hop)
        self.reset()

    def reset(self) -> None:
        self.samples = torch.zeros(0)
        self.offset = 0  # absolute index of self.samples[0] (a multiple of hop)
        self.emitted = 0  # frames emitted so far
        self.received = 0

    def _features(self, last_frame: int) -> Tensor:
        """Frames ``emitted .. last_frame - 1`` from the kept samples."""
        if last_frame <= self.emitted:
            return torch.zeros(self.featurizer.num_features, 0)
        with torch.no_grad():
            feats, _ = self.featurizer(self.samples[None], torch.tensor([self.samples.numel()]))
        first = self.offset // self.hop
        out = feats[0, :, self.emitted - first : last_frame - first]
        self.emitted = last_frame
        keep_from = max(0, self.emitted - self.margin) * self.hop  # next segment start, hop-aligned
        self.samples = self.samples[keep_from - self.offset :]
        self.offset = keep_from
        return out

    def accept(self, samples: Tensor) -> Tensor:
        self.samples = torch.cat([self.samples, samples.float().flatten()])
        self.received += samples.numel()
        # frame f (centred at f * hop) is final when its window ends inside the received audio
        final = (self.received - self.half_window) // self.hop + 1 if self.received >= self.half_window else 0
        return self._features(final)

    def finish(self) -> Tensor:
        return self._features(int(self.featurizer.num_frames(self.received)))


class StreamingDeepSpeech2:
    """Incremental forward pass of a forward-only :class:`DeepSpeech2` (see the module docstring).

    ``accept(features (F, t)) -> logits (t', V)`` of the output frames that became final;
    ``finish() -> logits`` of the rest. Concatenated, they equal ``model(all features)`` in eval mode.
    """

    def __init__(self, model: DeepSpeech2) -> None:
        if model.config.bidirectional:
            raise ValueError("streaming needs a forward-only DeepSpeech2 (bidirectional=False), e.g. ds2-streaming")
        self.model = model.eval()
        self.reset()

    def reset(self) -> None:
        front = self.model.front_end
        param = next(self.model.parameters())
        self.conv_buffers: list[Tensor] = []
        self.freqs: list[int] = []  # output frequency bins of each conv
        freq = self.model.config.in_features
        for conv, (pt, _) in zip(front.convs, front.padding):
            self.conv_buffers.append(param.new_zeros(1, conv.in_channels, pt, freq))  # left zero padding
            freq = (freq + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
            self.freqs.append(freq)
        self.states: list[State | None] = [None] * len(self.model.rnns)
        self.lookahead_buffer = param.new_zeros(1, 0, self.model.config.rnn_hidden)
        self.finished = False

    def _conv(self, index: int, frames: Tensor) -> Tensor:
        """Append (1, C, t, F) frames to conv ``index``'s buffer; return the outputs now computable."""
        front = self.model.front_end
        (kt, _), (st, _) = front.kernels[index], front.strides[index]
        buffer = torch.cat([self.conv_buffers[index], frames], dim=2)
        ready = (buffer.shape[2] - kt) // st + 1 if buffer.shape[2] >= kt else 0
        if ready == 0:
            self.conv_buffers[index] = buffer
            return buffer.new_zeros(1, front.convs[index].out_channels, 0, self.freqs[index])
        used = buffer[:, :, : (ready - 1) * st + kt]
        out = front.layer(index, used, torch.ones(1, ready, dtype=torch.bool, device=buffer.device))
        self.conv_buffers[index] = buffer[:, :, ready * st :]
        return out

    def _front_end(self, x: Tensor, final: bool) -> Tensor:
        """(1, 1, t, F) spectrogram frames -> (1, t', C * F') conv outputs; ``final`` flushes the padding."""
        for index, buffer in enumerate(self.conv_buffers):
            if final:
                pt = self.model.front_end.padding[index][0]
                x = torch.cat([x, x.new_zeros(1, buffer.shape[1], pt, buffer.shape[3])], dim=2)
            x = self._conv(index, x)
        return x.permute(0, 2, 1, 3).flatten(2)

    def _recurrent(self, x: Tensor) -> Tensor:
        if x.shape[1] == 0:
            return x.new_zeros(1, 0, self.model.config.rnn_hidden)
        lengths = torch.tensor([x.shape[1]], device=x.device)
        mask = torch.ones(1, x.shape[1], dtype=torch.bool, device=x.device)
        for index, rnn in enumerate(self.model.rnns):
            y, self.states[index] = rnn(x, lengths, mask, self.states[index])
            x = self.model.merge(y)
        return x

    def _head(self, h: Tensor, final: bool) -> Tensor:
        lookahead = self.model.lookahead
        if lookahead is None:
            return self.model.classify(h)
        buffer = torch.cat([self.lookahead_buffer, h], dim=1)
        if final:
            buffer = torch.cat([buffer, buffer.new_zeros(1, lookahead.context, buffer.shape[2])], dim=1)
        ready = buffer.shape[1] - lookahead.context
        if ready <= 0:
            self.lookahead_buffer = buffer
            return self.model.classify(buffer[:, :0])
        rows = lookahead.conv(buffer.transpose(1, 2)).transpose(1, 2)  # valid convolution: `ready` frames
        self.lookahead_buffer = buffer[:, ready:]
        return self.model.classify(rows)

    def _step(self, features: Tensor, final: bool) -> Tensor:
        if self.finished:
            raise RuntimeError("stream already finished; call reset() to start a new one")
        if features.dim() != 2 or features.shape[0] != self.model.config.in_features:
            raise ValueError(f"expected features ({self.model.config.in_features}, T), got {tuple(features.shape)}")
        with torch.no_grad():
            x = features.T[None, None].to(next(self.model.parameters()))
            h = self._recurrent(self._front_end(x, final))
            logits = self._head(h, final)
        self.finished = final
        return logits[0]

    def accept(self, features: Tensor) -> Tensor:
        return self._step(features, final=False)

    def finish(self) -> Tensor:
        return self._step(torch.zeros(self.model.config.in_features, 0), final=True)


class StreamingTranscriber:
    """Audio (or feature) chunks -> partial greedy CTC transcripts of a forward-only DeepSpeech2.

    Args:
        model: forward-only DeepSpeech2 (put in eval mode).
        labels: id -> text of each output unit; ``labels[blank]`` is the CTC blank.
        featurizer: needed only for :meth:`accept_audio`.
    """

    def __init__(
        self, model: DeepSpeech2, labels: list[str], featurizer: Featurizer | None = None, blank: int = 0
    ) -> None:
        if not isinstance(model, DeepSpeech2):
            raise ValueError(f"streaming needs a forward-only DeepSpeech2 encoder, got {type(model).__name__}")
        self.network = StreamingDeepSpeech2(model)
        self.featurizer = StreamingFeaturizer(featurizer) if featurizer is not None else None
        self.labels, self.blank = labels, blank
        self.reset()

    @classmethod
    def from_recognizer(cls, recognizer) -> StreamingTranscriber:
        """From a :class:`~zoo.speech.recognizer.SpeechRecognizer` whose encoder is a forward-only DeepSpeech2."""
        tokenizer = recognizer.tokenizer
        return cls(recognizer.encoder, tokenizer.labels, featurizer=recognizer.featurizer, blank=tokenizer.blank)

    def reset(self) -> None:
        self.network.reset()
        if self.featurizer is not None:
            self.featurizer.reset()
        self.ids: list[int] = []
        self.previous = self.blank

    def _decode(self, logits: Tensor) -> str:
        for token in logits.argmax(-1).tolist():
            if token != self.previous and token != self.blank:
                self.ids.append(token)
            self.previous = token
        return self.text

    @property
    def text(self) -> str:
        """The transcript so far (greedy CTC: repeats collapsed, blanks removed)."""
        return "".join(self.labels[i] for i in self.ids)

    def accept(self, features: Tensor) -> str:
        """Feed feature frames (F, t); return the partial transcript."""
        return self._decode(self.network.accept(features))

    def accept_audio(self, samples: Tensor) -> str:
        """Feed audio samples (S,) at the featurizer's rate; return the partial transcript."""
        if self.featurizer is None:
            raise ValueError("accept_audio needs the featurizer given to StreamingTranscriber")
        return self._decode(self.network.accept(self.featurizer.accept(samples)))

    def finish(self) -> str:
        """End of stream: flush the remaining context; the full transcript."""
        if self.featurizer is not None:
            tail = self.featurizer.finish()
            self._decode(self.network.accept(tail))
        return self._decode(self.network.finish())
