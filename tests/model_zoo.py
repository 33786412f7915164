"""Tiny random-init architectures beyond torchvision, built from configs (no downloads): timm vision models and
Hugging Face transformers encoders/decoders. Each entry returns (model in eval mode, inputs, fresh inputs)."""

from __future__ import annotations

from typing import Any, Callable

import torch


def _img() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32)


def _ids() -> torch.Tensor:
    return torch.randint(3, 90, (2, 8))


def _timm(factory: Callable[[Any], torch.nn.Module]) -> Callable[[], tuple]:
    def build():
        import timm
        return factory(timm), _img(), _img()
    return build


def _hf(factory: Callable[[Any], torch.nn.Module], inputs: Callable[[], Any] = _ids) -> Callable[[], tuple]:
    def build():
        import transformers
        transformers.logging.set_verbosity_error()
        return factory(transformers), inputs(), inputs()
    return build


def _small(**extra) -> dict:
    base = dict(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return {**base, **extra}


def _seq2seq_ids() -> dict:
    return {"input_ids": _ids(), "decoder_input_ids": _ids()}


ViT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
ZOO: dict[str, Callable[[], tuple]] = {
    "timm-vit": _timm(lambda t: t.models.vision_transformer.VisionTransformer(**ViT)),
    "timm-deit": _timm(lambda t: t.models.deit.VisionTransformerDistilled(**ViT)),
    "timm-mixer": _timm(lambda t: t.models.mlp_mixer.MlpMixer(num_classes=10, img_size=32, patch_size=8,
                                                              num_blocks=2, embed_dim=32)),
    "timm-convnext": _timm(lambda t: t.models.convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32),
                                                                num_classes=10)),
    "timm-swin": _timm(lambda t: t.models.swin_transformer.SwinTransformer(
        img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), num_classes=10)),
    "timm-convit": _timm(lambda t: t.create_model("convit_tiny", img_size=32, patch_size=8, embed_dim=32, depth=2,
                                                  num_heads=2, num_classes=10, local_up_to_layer=1)),
    "timm-cait": _timm(lambda t: t.create_model("cait_xxs24_224", img_size=32, patch_size=8, embed_dim=32, depth=1,
                                                num_heads=2, depth_token_only=1, num_classes=10)),
    "timm-poolformer": _timm(lambda t: t.models.metaformer.MetaFormer(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32),
                                                                      num_classes=10)),
    "timm-pvt-v2": _timm(lambda t: t.models.pvt_v2.PyramidVisionTransformerV2(
        depths=(1, 1, 1, 1), embed_dims=(8, 16, 24, 32), num_heads=(1, 1, 1, 1), num_classes=10)),
    "timm-levit (hybrid conv-attention)": _timm(lambda t: t.models.levit.Levit(
        img_size=32, embed_dim=(16, 24, 32), key_dim=8, num_heads=(1, 1, 1), depth=(1, 1, 1), num_classes=10)),
    "timm-edgenext (hybrid conv-attention)": _timm(lambda t: t.create_model(
        "edgenext_xx_small", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=10)),
    "timm-xcit": _timm(lambda t: t.create_model("xcit_nano_12_p16_224", img_size=32, patch_size=8, embed_dim=32,
                                                depth=1, num_heads=2, num_classes=10)),
    "bert": _hf(lambda t: t.BertModel(t.BertConfig(**_small()))),
    "roberta": _hf(lambda t: t.RobertaModel(t.RobertaConfig(**_small()))),
    "albert (shared layers)": _hf(lambda t: t.AlbertModel(t.AlbertConfig(**_small(embedding_size=16)))),
    "electra": _hf(lambda t: t.ElectraModel(t.ElectraConfig(**_small(embedding_size=16)))),
    "distilbert": _hf(lambda t: t.DistilBertModel(t.DistilBertConfig(
        vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64, pad_token_id=0))),
    "gpt2 (Conv1D)": _hf(lambda t: t.GPT2Model(t.GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2,
                                                              n_positions=64, bos_token_id=1, eos_token_id=2))),
    "gpt-neo": _hf(lambda t: t.GPTNeoModel(t.GPTNeoConfig(
        vocab_size=100, hidden_size=32, num_layers=1, num_heads=2, attention_types=[[["global"], 1]],
        max_position_embeddings=64, bos_token_id=1, eos_token_id=2))),
    "opt": _hf(lambda t: t.OPTModel(t.OPTConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64,
        max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=0, bos_token_id=1, eos_token_id=2))),
    "bloom": _hf(lambda t: t.BloomModel(t.BloomConfig(vocab_size=100, hidden_size=32, n_layer=1, n_head=2))),
    "llama": _hf(lambda t: t.LlamaModel(t.LlamaConfig(**_small()))),
    "mistral": _hf(lambda t: t.MistralModel(t.MistralConfig(**_small(num_key_value_heads=1)))),
    "qwen2": _hf(lambda t: t.Qwen2Model(t.Qwen2Config(**_small(num_key_value_heads=1)))),
    "t5-encoder (reads wo.weight.dtype)": _hf(lambda t: t.T5EncoderModel(t.T5Config(
        vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2))),
    "t5": _hf(lambda t: t.T5Model(t.T5Config(vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=1,
                                             num_heads=2, decoder_start_token_id=0)), _seq2seq_ids),
    "bart": _hf(lambda t: t.BartModel(t.BartConfig(
        vocab_size=100, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)),
        _seq2seq_ids),
    "hf-vit": _hf(lambda t: t.ViTModel(t.ViTConfig(**_small(image_size=32, patch_size=8))), _img),
    "whisper-encoder (Conv1d)": _hf(lambda t: t.WhisperModel(t.WhisperConfig(
        vocab_size=100, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8, max_source_positions=8,
        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1)).encoder, lambda: torch.randn(2, 8, 16)),
    "wav2vec2 (Conv1d, weight-norm conv)": _hf(lambda t: t.Wav2Vec2Model(t.Wav2Vec2Config(**_small(
        conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2))), lambda: torch.randn(2, 400)),
}
