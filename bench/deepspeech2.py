"""DeepSpeech2 benchmarks: training throughput against a straightforward baseline, streaming RTF.

    python bench/deepspeech2.py [--steps 3] [--large-seconds 4 3] [--skip-large] [--device cpu]

* Training throughput (audio seconds per second of one optimizer step: forward, CTC, backward,
  SGD) of ``ds2-demo`` at batch 16 and one step of ``ds2-large`` at batch 2, against a baseline
  written here with the same layer sizes: the usual padded implementation, ``nn.BatchNorm1d`` on
  the padded layer input (padding enters the statistics) and a padded bidirectional ``nn.GRU``
  (padding enters the backward direction). The zoo model is exact (padding-invariant, BN of ``W x``
  over valid frames only); the ratio ``zoo / baseline`` of step times is printed.
* Streaming real-time factor of ``ds2-streaming-demo`` fed 200 ms feature chunks
  (processing time / audio time, per chunk).

Timings are wall-clock medians; on a shared CPU they are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

import zoo
from zoo.speech.deepspeech2 import DeepSpeech2, DeepSpeech2Config, frame_mask
from zoo.speech.streaming import StreamingTranscriber

FRAMES_PER_SECOND = 100  # 10 ms hop


class BaselineDS2(nn.Module):
    """Padded DeepSpeech2 with the sizes of a DeepSpeech2Config: ``nn.BatchNorm2d`` after each conv,
    ``nn.BatchNorm1d`` over the padded input of each bidirectional ``nn.GRU`` (deepspeech.pytorch's
    layout), FC and output layer. Not padding-invariant."""

    def __init__(self, config: DeepSpeech2Config) -> None:
        super().__init__()
        self.config = config
        layers, channels, freq = [], 1, config.in_features
        for c_out, (kt, kf), (st, sf) in zip(config.conv_channels, config.conv_kernels, config.conv_strides):
            layers += [
                nn.Conv2d(channels, c_out, (kt, kf), (st, sf), (kt // 2, kf // 2), bias=False),
                nn.BatchNorm2d(c_out),
                nn.Hardtanh(0, config.relu_clip),
            ]
            channels, freq = c_out, (freq + 2 * (kf // 2) - kf) // sf + 1
        self.conv = nn.Sequential(*layers)
        width = channels * freq
        self.norms, self.rnns = nn.ModuleList(), nn.ModuleList()
        for _ in range(config.rnn_layers):
            self.norms.append(nn.BatchNorm1d(width))
            self.rnns.append(nn.GRU(width, config.rnn_hidden, batch_first=True, bidirectional=True))
            width = config.rnn_hidden * (2 if config.merge == "concat" else 1)
        self.fc = nn.Linear(width, config.fc_hidden)
        self.output = nn.Linear(config.fc_hidden, config.num_classes)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(features.transpose(1, 2).unsqueeze(1))
        for (kt, _), (st, _) in zip(self.config.conv_kernels, self.config.conv_strides):
            lengths = torch.div(lengths + 2 * (kt // 2) - kt, st, rounding_mode="floor") + 1
        x = x.permute(0, 2, 1, 3).flatten(2)
        for norm, rnn in zip(self.norms, self.rnns):
            x = rnn(norm(x.transpose(1, 2)).transpose(1, 2))[0]
            if self.config.merge == "sum":
                x = x.view(*x.shape[:2], 2, -1).sum(2)
        return self.output(F.hardtanh(self.fc(x), 0, self.config.relu_clip)), lengths


def train_steps(models: list[nn.Module], features: torch.Tensor, lengths: torch.Tensor, steps: int) -> list[float]:
    """Median seconds of one SGD step (forward, CTC, backward, update) of each model, after one
    warm-up step. The models' steps are interleaved, so a varying machine load hits them alike."""
    optimizers = [torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9, nesterov=True) for m in models]
    targets = torch.randint(1, models[0].config.num_classes, (features.shape[0], 8), device=features.device)
    target_lengths = torch.full((features.shape[0],), 8, device=features.device)
    times: list[list[float]] = [[] for _ in models]
    for step in range(steps + 1):
        for model, optimizer, record in zip(models, optimizers, times):
            start = time.perf_counter()
            logits, out_lengths = model(features, lengths)
            loss = F.ctc_loss(logits.float().log_softmax(-1).transpose(0, 1), targets, out_lengths, target_lengths)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if features.is_cuda:
                torch.cuda.synchronize()
            if step:
                record.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def padding_error(model: nn.Module, features: torch.Tensor, lengths: torch.Tensor) -> float:
    """Max |logit difference| of the shortest utterance alone vs in the padded batch (eval mode)."""
    model.eval()
    with torch.no_grad():
        batch, out_lengths = model(features, lengths)
        b = int(lengths.argmin())
        alone, _ = model(features[b : b + 1, :, : int(lengths[b])], lengths[b : b + 1])
    model.train()
    n = int(out_lengths[b])
    return float((batch[b, :n] - alone[0, :n]).abs().max())


def compare(name: str, config: DeepSpeech2Config, seconds: list[float], steps: int, device: str) -> None:
    torch.manual_seed(0)
    lengths = torch.tensor([round(s * FRAMES_PER_SECOND) for s in seconds])
    features = torch.randn(len(seconds), config.in_features, int(lengths.max()))
    features = (features * frame_mask(lengths, features.shape[2])[:, None, :]).to(device)
    lengths = lengths.to(device)
    ours, base = DeepSpeech2(config).to(device), BaselineDS2(config).to(device)
    t_ours, t_base = train_steps([ours, base], features, lengths, steps)
    audio = sum(seconds)
    print(f"{name}: batch {len(seconds)}, {audio:.1f} s of audio per step")
    print(
        f"  zoo DeepSpeech2  {t_ours * 1e3:8.1f} ms/step  {audio / t_ours:7.1f} audio s/s  "
        f"padding error {padding_error(ours, features, lengths):.1e}"
    )
    print(
        f"  padded baseline  {t_base * 1e3:8.1f} ms/step  {audio / t_base:7.1f} audio s/s  "
        f"padding error {padding_error(base, features, lengths):.1e}"
    )
    print(f"  ratio zoo/baseline step time: {t_ours / t_base:.2f}")


def streaming_rtf(chunk_ms: int, seconds: float) -> None:
    model = zoo.create("ds2-streaming-demo").eval()
    transcriber = StreamingTranscriber(model, labels=[""] + list("abcdefghijklmnopqrstuvwxyz '"))
    features = torch.randn(model.config.in_features, round(seconds * FRAMES_PER_SECOND))
    chunk = chunk_ms * FRAMES_PER_SECOND // 1000
    times = []
    with torch.inference_mode():
        for start in range(0, features.shape[1], chunk):
            begin = time.perf_counter()
            transcriber.accept(features[:, start : start + chunk])
            times.append(time.perf_counter() - begin)
        transcriber.finish()
    rtf = statistics.median(times) / (chunk_ms / 1000)
    print(
        f"streaming ds2-streaming-demo: {chunk_ms} ms chunks, median {statistics.median(times) * 1e3:.1f} ms "
        f"per chunk, real-time factor {rtf:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--large-seconds", type=float, nargs="+", default=[4.0, 3.0])
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    demo = zoo.registry.build_config("ds2-demo")[1]
    compare("ds2-demo", demo, [3.0 - 0.1 * i for i in range(16)], args.steps, args.device)
    if not args.skip_large:
        large = zoo.registry.build_config("ds2-large")[1]
        compare("ds2-large", large, args.large_seconds, args.steps, args.device)
    streaming_rtf(200, 6.0)


if __name__ == "__main__":
    main()
