package dev.glassexport.demo

import dev.glassexport.core.Backend
import dev.glassexport.core.GlassException
import dev.glassexport.core.Manifest
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/**
 * ExecuTorch backend over model.pte's `prefill` and `decode` methods; the KV cache lives inside
 * the program. Android only (org.pytorch.executorch), so it is not compiled on the host. GLASS
 * programs call glass::gather_ffn / ffn_up / ffn_down: the AAR must be built with those kernels.
 */
class ExecuTorchBackend(private val manifest: Manifest) : Backend {
    private val module: Module

    init {
        if (manifest.target != "executorch") {
            throw GlassException("artifact target is ${manifest.target}, not executorch", "pick a .pte artifact")
        }
        module = try {
            Module.load(manifest.file("program").toString())
        } catch (e: Exception) {
            throw GlassException("ExecuTorch cannot load the program: ${e.message}",
                "use an ExecuTorch AAR built with the glass kernels (android_demo/README.md)", e)
        }
    }

    override fun prefill(ids: LongArray): Backend.Prefill {
        val out = module.execute("prefill", EValue.from(Tensor.fromBlob(ids, longArrayOf(1, ids.size.toLong()))))
        val logits = out[0].toTensor().dataAsFloatArray
        val vocab = logits.size / ids.size
        val flat = out[2].toTensor().dataAsLongArray
        val indices = Array(manifest.numLayers) { layer -> flat.copyOfRange(layer * manifest.k, (layer + 1) * manifest.k) }
        return Backend.Prefill(logits.copyOfRange(logits.size - vocab, logits.size), indices)
    }

    override fun decode(token: Long, position: Long, indices: Array<LongArray>): FloatArray {
        val flat = LongArray(indices.size * manifest.k)
        indices.forEachIndexed { layer, row -> row.copyInto(flat, layer * manifest.k) }
        val out = module.execute(
            "decode",
            EValue.from(Tensor.fromBlob(longArrayOf(token), longArrayOf(1, 1))),
            EValue.from(Tensor.fromBlob(longArrayOf(position), longArrayOf(1, 1))),
            EValue.from(Tensor.fromBlob(flat, longArrayOf(indices.size.toLong(), manifest.k.toLong()))),
        )
        return out[0].toTensor().dataAsFloatArray
    }

    override fun close() = module.destroy()
}
