"""Video2WorldPipeline: owns the DiT, VAE, T5, refiner/critic and guardrail, and turns one prompt plus
one conditioning input into one video.

It is built from a BuildConfig (engine/spec.py: model size, resolution, fps, checkpoints, offload and
kernel flags) and never changes after that; each `generate(job, ...)` brings the job's own fields
(prompt, input, seed, steps, guidance, aspect ratio, checks). So a warm pipeline is reused across jobs
while `build_key` stays the same, and no job can leave its settings behind for the next one. T5 /
refiner / guardrail go to the CPU on request; progress is structured events through `emit`
(engine/events.py), never printed text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from engine import events, memory, parallel, resolutions
from engine.phases import key_fields, phase
from engine.spec import BuildConfig, GenerationSpec, build_key


class Cancelled(Exception):
    """The job's cancel event was set; raised between denoising steps."""


class GuardrailBlocked(Exception):
    """A guardrail check refused the prompt or the video; the message names the check."""


@dataclass
class GenerationResult:
    video: torch.Tensor  # [3, T, H, W] float in [-1, 1], on CPU
    prompt: str
    refined_prompt: Optional[str]
    negative_prompt: str
    seed: int
    timings: dict = field(default_factory=dict)
    latent: Optional[torch.Tensor] = None  # [16, t, h, w] float32 on CPU (the sampler's x0)
    guardrail_checks: list = field(default_factory=list)  # names of the checks that ran, in order


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class Video2WorldPipeline:
    def __init__(self, build: BuildConfig | GenerationSpec, device: torch.device | None = None,
                 dtype: torch.dtype | None = None, emit: events.Emit | None = None):
        self.build = build if isinstance(build, BuildConfig) else BuildConfig.from_spec(build)
        self.key = self.build.key()
        self.key_fields = key_fields(self.build)  # on every phase event: durations are per build
        self._denoised = False  # the first denoise of a pipeline pays compilation / autotuning
        # under torchrun with --num_gpus N: join the group; each rank gets its own GPU
        parallel.maybe_init_from_env(self.build.num_gpus)
        self.device = device or parallel.device(default_device())
        # bf16 on GPU as the reference; fp32 on CPU (bf16 matmuls on CPU are slow and tests want fp32)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.ev = events.Emitter(emit)
        self.dit = None
        self.vae = None
        self.text_encoder = None
        self._refiner = None
        self._guardrail = None
        self._offloaded = False  # DiT/VAE/T5 parked on the CPU while a critic had the GPU
        self._parking: memory.HostParking | None = None  # their host buffers, made at the first park

    # -- loading ------------------------------------------------------------------------------

    def set_emit(self, emit: events.Emit | None, job=None) -> None:
        # one voice per job: only rank 0 reports progress under context parallelism
        self.ev = events.Emitter(emit if parallel.is_main() else None, job)

    def load(self) -> "Video2WorldPipeline":
        from engine import checkpoints

        if self.dit is not None and self.vae is not None and self.text_encoder is not None:
            return self  # nothing to load: no phase, or the ETA would learn a loading time of zero
        t0 = time.perf_counter()
        with phase(self.ev, "loading", self.key_fields, component="pipeline"):
            if self.dit is None:
                self.check_kernels()
                self.ev.log(f"loading DiT ({self.build.model_size})")
                self.dit = checkpoints.build_dit(self.build, self.device, self.dtype).eval()
                self.quantize_dit()
                self.dit = parallel.wrap_dit(self.dit)  # the same DiT alone; split over the ranks under torchrun
                self._compile_dit()
            if self.vae is None:
                self.vae = checkpoints.build_vae(self.build, self.device, self.dtype).eval()
                self.prepare_vae()
            if self.text_encoder is None:
                te_device = torch.device("cpu") if self.build.offload_text_encoder else self.device
                self.text_encoder = checkpoints.build_text_encoder(self.build, te_device, self.dtype)
        self.ev.log(f"models ready in {time.perf_counter() - t0:.1f}s")
        return self

    def prepare_vae(self) -> None:
        """On CUDA: cuDNN's autotuner on (the VAE's few conv shapes repeat on every chunk and job; alone it
        changed nothing measurable, but the faster decoder layout was measured with it) and the decoder's
        weights channels-last (bench/RESULTS.md: decode 3.87 -> 3.28 s at 720p on the H200)."""
        if self.device.type != "cuda":
            return
        torch.backends.cudnn.benchmark = True
        self.vae.decoder_channels_last_()

    def check_kernels(self) -> None:
        """An experimental kernel the build names must run on this device: refused here, before minutes of
        loading, with the field and the way back (a ValueError)."""
        if self.build.fp8_linears:
            from engine.models import fp8

            fp8.check_device(self.device, self.dtype)
        if self.build.attention_backend == "cudnn_fp8":
            from engine.models import cudnn_bsa

            why = cudnn_bsa.unusable(self.device)
            if why:
                raise ValueError(f"attention_backend: cudnn_fp8 (experimental): {why}; use auto")

    def quantize_dit(self) -> None:
        """fp8_linears (experimental): the blocks' large linears as FP8 GEMMs (check_kernels has seen this device
        run them). Before compiling: the graphs trace the FP8 ops."""
        if not self.build.fp8_linears:
            return
        from engine.models import fp8

        n = fp8.quantize_dit_(self.dit)
        self.ev.log(f"fp8 linears (experimental): {n} linear layers of the DiT run as float8_e4m3fn GEMMs; "
                    f"the video differs from the exact path's")

    def _compile_dit(self) -> None:
        """Compile each block (one graph shared by all blocks, static shapes). --use_cuda_graphs adds CUDA
        graphs ("reduce-overhead"), which pays off only at small token counts."""
        if self.device.type != "cuda" or not (self.build.compile_dit or self.build.use_cuda_graphs):
            return
        mode = "reduce-overhead" if self.build.use_cuda_graphs else None
        self.dit = compile_dit(self.dit, mode=mode)
        self.ev.log(f"DiT blocks compiled lazily ({mode or 'default'} mode); the first step includes compilation")

    @property
    def guardrail(self):
        if self._guardrail is None:
            from engine import checkpoints
            from engine.guardrail import Guardrail

            g = Guardrail(
                checkpoints.checkpoints_root(), offload=self.build.offload_guardrail,
                emit=self._current_emit, disabled=False,
                profile="tiny" if self.build.model_size == "tiny" else "full",
            )
            g.require()  # refuse before generating, and again for the next job, until the checkpoints exist
            self._guardrail = g
        return self._guardrail

    @property
    def refiner(self):
        if self._refiner is None:
            from engine import checkpoints
            from engine.models import reason

            self._refiner = reason.build_reason(self.build, checkpoints.reason_dir(self.build), self.device,
                                                offload=self.build.offload_prompt_refiner, emit=self._current_emit)
        return self._refiner

    def _current_emit(self, event: dict) -> None:
        # The refiner and guardrail outlive the job that built them (the pipeline stays warm), so they get
        # this forwarder, which reaches whichever job's emitter is current, not the first job's.
        self.ev.send(event)

    def release_aux(self) -> None:
        """Drop refiner and guardrail models (best-of-N loads the critic after generation)."""
        self._refiner = None
        self._guardrail = None
        memory.release_cached()

    def offload_generator(self) -> int:
        """Move the DiT, the VAE and T5 to the CPU so the critic (Cosmos-Reason1-7B) has the GPU: without
        this, 14B best-of-N holds ~28.5 GB of DiT beside the critic on an 80 GB card. The pipeline stays
        warm (host memory); the next generate brings the models back. Returns the bytes moved off the GPU.

        The host side is memory.HostParking: one page-locked buffer per model, made at the first park and
        kept (reused by every later park) while the pipeline lives, so a warm best-of-N server holds the
        generator's size in pinned host RAM between jobs too; `.to("cpu")` freed its pageable copies at
        each onload, and took 30.4 s for the 14B's 26.8 GiB on the H200."""
        self.release_aux()
        if self.device.type == "cpu" or self._offloaded:
            return 0
        parts = {"dit": self.dit, "vae": self.vae, "text_encoder": self.text_encoder}
        moved = sum(b for per in memory.component_bytes(parts).values() for d, b in per.items() if d != "cpu")
        if self._parking is None:
            # a forwarder, not self.ev.log: the pipeline outlives the job whose emitter is current now
            self._parking = memory.HostParking(log=lambda msg: self.ev.log(msg))
        for part in parts.values():
            if part is not None:
                self._parking.park(part)  # page-locked buffers, allocated once and reused by later parks
        memory.release_cached()
        self._offloaded = True
        self.ev.log(f"generator moved to the CPU for the critic ({moved / 2**30:.1f} GiB of GPU memory freed)")
        return moved

    def _onload_generator(self) -> None:
        if not self._offloaded:
            return
        t0 = time.perf_counter()
        with phase(self.ev, "loading", self.key_fields, component="generator"):  # back from the CPU
            # only what was parked comes back: an offloaded T5 never left the CPU
            for part in (self.dit, self.vae, self.text_encoder):
                if part is not None:
                    self._parking.unpark(part, self.device)
        self._offloaded = False
        self.ev.log(f"generator back on {self.device} in {time.perf_counter() - t0:.1f}s")

    # -- one generation -----------------------------------------------------------------------

    def text_check(self, text: str, what: str, fields: dict | None = None) -> None:
        with phase(self.ev, "guardrail", self.key_fields, target=what.replace(" ", "_"), **(fields or {})):
            verdict = self.guardrail.check_text(text)
        if not verdict.ok:
            raise GuardrailBlocked(f"guardrail: the {what} was blocked by {verdict.check_name}: {verdict.message}")

    def refine(self, prompt: str, input_path: str, fields: dict | None = None) -> Optional[str]:
        t0 = time.perf_counter()
        with phase(self.ev, "refine", self.key_fields, **(fields or {})):
            refined = self.refiner.refine_prompt(prompt, input_path)
        self.ev.log(f"prompt refined in {time.perf_counter() - t0:.1f}s")
        return refined

    def conditioning(self, input_path: str | None, frames: torch.Tensor | None, num_conditional_frames: int,
                     aspect_ratio: str = "16:9"):
        """Encode the conditioning frames. `frames` ([3,T,H,W] in [-1,1], already sized) bypasses the file
        (long video passes the previous chunk's last frames at full precision).

        Only the pixel frames that make the conditioned latent frames are encoded: the first
        `pixel_frames(n_lat)` of the clip the reference builds (the image, or the last 1 or 5 video
        frames; its black or repeated filler frames come after them). The Wan VAE's encoder is causal in
        time (engine/models/vae.py), so latent frame j depends on pixel frames <= 4j only, and these
        latents are those of a whole-clip encode; encoding the filler too cost ~2.8 s of 93 frames at
        720p (bench_e2e on the H200) for latent frames nobody reads. `gt` keeps the full latent length
        (the noise is drawn in its shape), with zeros on the unconditioned frames: the sampler reads gt
        only where the conditioning mask is set (sampling.Conditioning)."""
        from engine import io, sampling

        w, h = resolutions.frame_size(self.build.resolution, aspect_ratio, self.build.model_size)
        n_frames = resolutions.num_frames(self.build.fps, self.build.model_size)
        n_lat = resolutions.conditional_latent_frames(num_conditional_frames)
        n_pix = resolutions.pixel_frames(n_lat)  # == num_conditional_frames for the allowed 1 and 5
        if frames is None:
            clip = io.load_conditioning_clip(input_path, num_conditional_frames, w, h, n_pix)
            # the reference normalises pixels in the pipeline's precision (bf16 on GPU)
            clip = io.to_signed_unit(clip.to(self.device), self.dtype)
        else:
            # in-memory frames (long video): the given frames, then (the reference's filler) repeats of
            # the last one, up to the n_pix frames encoded
            frames = frames[:, -num_conditional_frames:]
            clip = torch.cat([frames, frames[:, -1:].expand(-1, max(0, n_pix - frames.shape[1]), -1, -1)], dim=1)[:, :n_pix]
        clip = clip.to(self.device, self.dtype).unsqueeze(0)
        with torch.inference_mode():
            cond = self.vae.encode(clip).float()
            self._sync()  # the vae_encode phase is timed around this call: count the kernels, not their launch
        cond = parallel.broadcast_tensor(cond)  # every rank conditions on rank 0's latent, bit for bit
        b, c, _, lh, lw = cond.shape
        latent = cond.new_zeros(b, c, resolutions.latent_frames(n_frames), lh, lw)
        latent[:, :, :n_lat] = cond
        return sampling.Conditioning(gt=latent, num_frames=n_lat)

    def generate(self, job: GenerationSpec, input_path: str | None = None, *, seed: int | None = None,
                 frames: torch.Tensor | None = None, refine_input: str | None = None, cancel=None,
                 step_fields: dict | None = None, video_stream=None) -> GenerationResult:
        """One video for `job` (its prompt, negative prompt, steps, guidance, aspect ratio, conditional
        frames, guardrail/refiner switches). `input_path` defaults to the job's; `seed` overrides the job's
        (best-of-N and long video step it); `frames` replaces the input file (long video).

        `video_stream` (an engine.io.VideoStream, rank 0 only) gets the frames while the VAE decodes them;
        the caller closes it. Only with the guardrail off: a guarded video may be blocked or pixelated after
        the whole of it is decoded, so its file can't start before that."""
        from engine import sampling

        if isinstance(job, str):
            raise TypeError("generate takes the job's GenerationSpec first (its prompt, steps, guidance...), "
                            "not a prompt: pipe.generate(spec, input_path, seed=...)")
        if video_stream is not None and not job.disable_guardrail:
            raise ValueError("video_stream: the guardrail checks the whole decoded video before it is written; "
                             "stream only jobs with disable_guardrail")
        if build_key(job) != self.key:
            raise ValueError("this pipeline was built for other settings (model, resolution, fps, checkpoints, "
                             "offload or kernel flags); get one for this job with engine.pipeline.get_pipeline")
        spec = job
        self._onload_generator()
        prompt = job.prompt
        if input_path is None and frames is None:
            input_path = job.input_path
        seed = job.seed if seed is None else seed
        negative_prompt = job.negative_prompt
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        extra = dict(step_fields or {})  # chunk c/C, generation g/G or benchmark run: on steps and phases
        key = self.key_fields

        def checked_prompt():
            if not spec.disable_guardrail:
                self.guardrail.take_ran()  # this generation's list starts here (a blocked one left names)
            if not spec.disable_guardrail:
                self.text_check(prompt, "prompt", extra)
            source = refine_input or input_path
            refined = self.refine(prompt, source, extra) if (source and not spec.disable_prompt_refiner) else None
            if refined is not None and not spec.disable_guardrail:
                self.text_check(refined, "refined prompt", extra)
            return refined

        # guardrail and refiner run once (rank 0); every rank then encodes the same text
        refined = parallel.share_from_main(checked_prompt)
        text = refined or prompt

        t0 = time.perf_counter()
        with phase(self.ev, "text_encode", key, **extra):
            # offloaded T5 lives on the CPU and visits the GPU only for prompts it has not encoded yet
            emb = self.text_encoder.encode([text, negative_prompt],
                                           run_on=self.device if self.build.offload_text_encoder else None)
            emb = parallel.broadcast_tensor(emb.to(self.device, self.dtype))  # bit-identical on every rank
        cond_emb, uncond_emb = emb[0:1], emb[1:2]
        timings["text_encode_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        with phase(self.ev, "vae_encode", key, **extra):
            conditioning = self.conditioning(input_path, frames, spec.num_conditional_frames, spec.aspect_ratio)
        timings["vae_encode_s"] = time.perf_counter() - t0

        shape = tuple(conditioning.gt.shape)
        noise = sampling.initial_noise(shape, seed, self.device)
        sigmas = sampling.sigma_schedule(spec.num_steps)
        x0_fn = sampling.make_x0_fn(self.dit, cond_emb, uncond_emb, spec.guidance, conditioning)

        steps = spec.num_steps
        first_step: list[float] = []

        def on_step(i: int, total: int, seconds: float) -> None:
            # only rank 0 hears a cancel request; every rank must stop at the same step
            if parallel.any_rank(cancel is not None and cancel.is_set()):
                raise Cancelled("cancelled by the user")
            if not first_step:
                first_step.append(seconds)  # the first evaluation's time: it includes compilation
            # the steps the user asked for; the sampler's extra clean evaluation is told apart
            final = {"final": True} if i > steps else {}
            self.ev("step", step=min(i, steps), total=steps, seconds=round(seconds, 4), **extra, **final)

        t0 = time.perf_counter()
        base = getattr(self.dit, "dit", self.dit)  # the MiniTrainDIT under a graph-step or parallel wrapper
        cache = None
        if spec.fast_threshold > 0:
            from engine.step_cache import StepCache

            cache = StepCache(spec.fast_threshold, total_calls=len(sigmas))
            self.ev.log(f"fast mode (experimental): step cache at threshold {spec.fast_threshold:g}; "
                        f"the video differs from the exact path")
        base.step_cache = cache
        cold = not self._denoised
        fast = {"fast_threshold": spec.fast_threshold} if spec.fast_threshold > 0 else {}
        try:
            with phase(self.ev, "denoise", key, steps=steps, **fast, **extra) as done:
                with torch.inference_mode():
                    x0 = sampling.sample(x0_fn, noise, sigmas, callback=on_step)
                self._sync()
                # units: network evaluations (steps + the final clean pass); cold: the first of this
                # pipeline, whose first step includes compilation (the ETA charges that to loading)
                done.update(units=len(sigmas), cold=cold,
                            first_step_s=round(first_step[0], 6) if first_step else None)
        finally:
            base.step_cache = None  # a warm pipeline's next job starts exact unless it asks again
        self._denoised = True
        timings["denoise_s"] = time.perf_counter() - t0
        if cache is not None:
            self.ev.log(cache.summary())
            timings["skipped_calls"] = len(cache.skipped)
        if not parallel.is_main():
            # rank 0 decodes, checks and writes; the others only had to take part in the denoising
            return GenerationResult(video=None, prompt=prompt, refined_prompt=refined, negative_prompt=negative_prompt,
                                    seed=seed, timings=timings, latent=x0[0].float().cpu())

        t0 = time.perf_counter()
        with phase(self.ev, "vae_decode", key, **extra):
            with torch.inference_mode():
                # the stream takes fp32 frames, the values `video` holds, so its file is write_video's
                feed = (lambda clip: video_stream.feed(clip[0].float())) if video_stream is not None else None
                decoded = self.vae.decode(x0.to(self.dtype), on_frames=feed).float()[0]
            self._sync()
            # handing the video to the host is part of this phase's time (a 1 GB copy at 720p, 93 frames
            # of fp32), not left between phases where no table would show it
            video = decoded.cpu()
        timings["vae_decode_s"] = time.perf_counter() - t0
        self.report_memory()
        del decoded
        checks: list[str] = []
        if not spec.disable_guardrail:
            with phase(self.ev, "guardrail", key, target="video", **extra):
                video = self.video_check(video)
            checks = self.guardrail.take_ran()
            note = (" (tiny profile, blocklist only: Llama Guard 3, the video safety filter and face "
                    "pixelation are not part of it)") if self.guardrail.profile == "tiny" else ""
            self.ev.log(f"guardrail: checks that ran: {', '.join(checks) or 'none'}{note}")
        else:
            self.ev.log("guardrail: off (--disable_guardrail), no checks ran")
        timings["total_s"] = time.perf_counter() - t_all
        return GenerationResult(video=video, prompt=prompt, refined_prompt=refined, negative_prompt=negative_prompt,
                                seed=seed, timings=timings, latent=x0[0].float().cpu(), guardrail_checks=checks)

    def video_check(self, video: torch.Tensor) -> torch.Tensor:
        from engine import io

        frames = io.to_uint8(video).permute(1, 2, 3, 0).contiguous()  # [T,H,W,C]
        verdict, frames = self.guardrail.check_video(frames)
        if not verdict.ok:
            raise GuardrailBlocked(f"guardrail: the video was blocked by {verdict.check_name}: {verdict.message}")
        # like the reference, a guarded video comes back 8-bit quantised
        return io.to_signed_unit(torch.as_tensor(frames).permute(3, 0, 1, 2))

    def report_memory(self) -> None:
        """The job's GPU memory so far (the peak is reset per job by the engine server, not here: a
        per-generation reset would hide T5's and the VAE encoder's peaks and earlier generations')."""
        fields = memory.cuda_memory(self.device) if self.device.type == "cuda" else None
        if fields:
            self.ev("memory", **fields)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# -- warm pipeline cache: one pipeline per process, replaced when the model key changes --------

_WARM: dict[tuple, Video2WorldPipeline] = {}


def get_pipeline(spec: GenerationSpec | BuildConfig, emit: events.Emit | None = None,
                 factory: Callable[[BuildConfig], Video2WorldPipeline] | None = None) -> Video2WorldPipeline:
    """The warm pipeline for this spec's BuildConfig, built (replacing the old one) when there is none."""
    build = spec if isinstance(spec, BuildConfig) else BuildConfig.from_spec(spec)
    key = build.key()
    pipe = _WARM.get(key)
    if pipe is None:
        _WARM.clear()  # free the old model before loading the new one
        memory.release_cached()
        pipe = (factory or Video2WorldPipeline)(build)
        pipe.set_emit(emit)
        pipe.load()
        _WARM[key] = pipe
    pipe.set_emit(emit)
    return pipe


class CudaGraphSteps(torch.nn.Module):
    """Starts a new CUDA-graph step before every denoiser call. Under "reduce-overhead" the outputs of one
    replay live in the graph's memory pool until the next step begins; the sampler keeps each call's
    result (x0, AB2's previous x0) only as new tensors computed from it, so a step per call is safe."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.dit = net  # the name ContextParallel uses too, so `getattr(x, "dit", x)` finds the net

    def forward(self, *args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return self.dit(*args, **kwargs)


def compile_dit(net: torch.nn.Module, mode: str | None = None, backend: str = "inductor") -> torch.nn.Module:
    """The DiT compiled for speed; returns what to call instead of `net`.

    Default: each block compiled on its own (one graph shared by all blocks of a kind, static shapes).
    "reduce-overhead" (CUDA graphs, --use_cuda_graphs) compiles the whole forward instead: with per-block
    graphs, block i+1 replays the graph block i just wrote its output into, while the residual stream
    still needs it ("accessing tensor output of CUDAGraphs that has been overwritten", seen on the H200).
    """
    if mode == "reduce-overhead":
        import torch._dynamo

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)
        net.compile(dynamic=False, mode=mode, backend=backend)
        return CudaGraphSteps(net)
    compile_blocks(getattr(net, "dit", net).blocks, mode=mode, backend=backend)  # through ContextParallel
    return net


def compile_blocks(blocks, mode: str | None = None, backend: str = "inductor") -> None:
    """Compile each DiT block with static shapes. All blocks share one code object, so dynamo keeps one
    cache entry per distinct kind of layer (dense, and each NATTEN window pattern: up to 6 in the released
    -natten nets) and per token grid; its default recompile limit of 8 would send the rest to eager. The
    limit is raised to what this net needs, no more, so a real recompile storm still shows."""
    import torch._dynamo

    kinds = {repr(getattr(getattr(b, "self_attn", None), "attn_op", None).__dict__) for b in blocks}
    need = 2 * len(kinds) + 2  # a CFG batch and a batch of 1 per kind, plus slack
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, need)
    for block in blocks:
        block.compile(dynamic=False, mode=mode, backend=backend)

