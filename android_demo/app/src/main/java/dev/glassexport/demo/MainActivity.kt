package dev.glassexport.demo

import android.app.Activity
import android.os.Bundle
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.Switch
import android.widget.TextView
import dev.glassexport.core.Backend
import dev.glassexport.core.BpeTokenizer
import dev.glassexport.core.GlassException
import dev.glassexport.core.Generator
import dev.glassexport.core.Manifest
import dev.glassexport.core.OrtBackend
import dev.glassexport.core.Sampler
import java.io.File
import kotlin.concurrent.thread

/**
 * One screen: the artifact directory (pushed with adb), a prompt, streamed output with live
 * tokens/s, and a switch between the GLASS artifact and its dense twin (`<dir>-dense`).
 */
class MainActivity : Activity() {
    private lateinit var directory: EditText
    private lateinit var prompt: EditText
    private lateinit var dense: Switch
    private lateinit var info: TextView
    private lateinit var output: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        directory = EditText(this).apply { setText(DEFAULT_DIR) }
        prompt = EditText(this).apply { setText("Write a short poem about the sea.") }
        dense = Switch(this).apply { text = "dense twin (compare speed)" }
        info = TextView(this)
        output = TextView(this)
        val run = Button(this).apply { text = "Generate"; setOnClickListener { generate() } }
        val column = LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            listOf(directory, prompt, dense, run, info, output).forEach { addView(it) }
        }
        setContentView(ScrollView(this).apply { addView(column) })
    }

    private fun generate() {
        val dir = File(directory.text.toString() + if (dense.isChecked) "-dense" else "").toPath()
        val text = prompt.text.toString()
        output.text = ""
        thread {
            try {
                val manifest = Manifest.load(dir)
                val backend: Backend = when (manifest.target) {
                    "onnx" -> OrtBackend(manifest, File(applicationInfo.nativeLibraryDir).toPath(), 0)
                    else -> ExecuTorchBackend(manifest)
                }
                backend.use {
                    val generator = Generator(it, manifest, BpeTokenizer(dir.resolve("tokenizer.json")))
                    val started = System.nanoTime()
                    var count = 0
                    runOnUiThread {
                        info.text = "${manifest.target}: ${manifest.method} density=${manifest.density} " +
                            "lambda=${manifest.lambda ?: "-"} k=${manifest.k}/${manifest.m}"
                    }
                    val result = generator.generate(text, 128, Sampler.greedy()) { _, soFar ->
                        count++
                        val rate = count / ((System.nanoTime() - started) / 1e9)
                        runOnUiThread { output.text = soFar; title = "%.1f tokens/s".format(rate) }
                    }
                    runOnUiThread {
                        title = "prefill %.0f ms, decode %.1f tokens/s".format(result.prefillMs, result.decodeTokensPerSecond())
                    }
                }
            } catch (e: GlassException) {
                runOnUiThread { output.text = e.message }
            } catch (e: RuntimeException) {
                runOnUiThread { output.text = "error: ${e.message}" }
            }
        }
    }

    companion object {
        const val DEFAULT_DIR = "/data/local/tmp/glass/artifact"
    }
}
