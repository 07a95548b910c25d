package dev.glassexport.core;

/** One runtime running a GLASS artifact: prefill densely once, then decode with the kept neurons. */
public interface Backend extends AutoCloseable {
  /** Logits of the last prompt position and the kept neuron indices [layers][k]. */
  final class Prefill {
    public final float[] lastLogits;
    public final long[][] indices;

    public Prefill(float[] lastLogits, long[][] indices) {
      this.lastLogits = lastLogits;
      this.indices = indices;
    }
  }

  Prefill prefill(long[] ids);

  /** Logits for the next token after `token` at `position` (= tokens already in the cache). */
  float[] decode(long token, long position, long[][] indices);

  /** The runtime, as shown in the app (e.g. "onnxruntime 1.29.0"). */
  String runtime();

  /** How the glass FFN op runs: the native kernel or the fallback (shown in the app). */
  String opImplementation();

  @Override
  void close();
}
