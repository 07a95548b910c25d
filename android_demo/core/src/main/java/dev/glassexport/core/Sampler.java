package dev.glassexport.core;

import java.util.Arrays;
import java.util.Random;

/** Greedy, or temperature / top-k / top-p sampling from a seeded generator. */
public final class Sampler {
  private final float temperature;
  private final int topK;
  private final float topP;
  private final Random random;

  private Sampler(float temperature, int topK, float topP, long seed) {
    if (temperature < 0 || topP <= 0 || topP > 1 || topK < 0) {
      throw new GlassException("bad sampler settings", "temperature >= 0, 0 < top-p <= 1, top-k >= 0 (0 = off)");
    }
    this.temperature = temperature;
    this.topK = topK;
    this.topP = topP;
    this.random = new Random(seed);
  }

  public static Sampler greedy() {
    return new Sampler(0f, 0, 1f, 0);
  }

  public static Sampler sampling(float temperature, int topK, float topP, long seed) {
    return new Sampler(temperature, topK, topP, seed);
  }

  public static int argmax(float[] logits) {
    int best = 0;
    for (int i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }

  public int next(float[] logits) {
    if (temperature == 0f) return argmax(logits);
    Integer[] order = new Integer[logits.length];
    for (int i = 0; i < order.length; i++) order[i] = i;
    Arrays.sort(order, (a, b) -> Float.compare(logits[b], logits[a]));
    int keep = topK > 0 ? Math.min(topK, order.length) : order.length;
    double max = logits[order[0]] / temperature;
    double[] probs = new double[keep];
    double sum = 0;
    for (int i = 0; i < keep; i++) {
      probs[i] = Math.exp(logits[order[i]] / temperature - max);
      sum += probs[i];
    }
    // top-p: the smallest prefix whose mass reaches topP
    double mass = 0;
    int cut = keep;
    for (int i = 0; i < keep; i++) {
      mass += probs[i] / sum;
      if (mass >= topP) {
        cut = i + 1;
        break;
      }
    }
    double total = 0;
    for (int i = 0; i < cut; i++) total += probs[i];
    double r = random.nextDouble() * total;
    for (int i = 0; i < cut; i++) {
      r -= probs[i];
      if (r <= 0) return order[i];
    }
    return order[cut - 1];
  }
}
