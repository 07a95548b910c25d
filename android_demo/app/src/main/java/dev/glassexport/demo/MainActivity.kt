package dev.glassexport.demo

import android.app.Activity
import android.os.Bundle
import android.view.View
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.Switch
import android.widget.TextView
import java.io.File

/**
 * One screen: the artifact directory (pushed with adb), a prompt, streamed output with live
 * tokens/s, and a switch between the GLASS artifact and its dense twin (`<dir>-dense`). The work
 * is in [DemoController]; leaving the screen (or rotating it) stops the generation and closes the session.
 */
class MainActivity : Activity(), DemoController.Screen {
    lateinit var directory: EditText; private set
    lateinit var prompt: EditText; private set
    lateinit var dense: Switch; private set
    lateinit var generate: Button; private set
    lateinit var stop: Button; private set
    lateinit var info: TextView; private set
    lateinit var stats: TextView; private set
    lateinit var message: TextView; private set
    lateinit var output: TextView; private set
    lateinit var controller: DemoController; private set

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        directory = EditText(this).apply { setText(intent.getStringExtra(EXTRA_DIR) ?: DEFAULT_DIR) }
        prompt = EditText(this).apply { setText("Write a short poem about the sea.") }
        dense = Switch(this).apply { text = "dense twin (compare speed)" }
        generate = Button(this).apply { text = "Generate"; setOnClickListener { onGenerate() } }
        stop = Button(this).apply { text = "Stop"; isEnabled = false; setOnClickListener { controller.stop() } }
        info = TextView(this)
        stats = TextView(this)
        message = TextView(this).apply { visibility = View.GONE }
        output = TextView(this)
        val column = LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            listOf(directory, prompt, dense, generate, stop, message, info, stats, output).forEach { addView(it) }
        }
        setContentView(ScrollView(this).apply { addView(column) })
        val libs = applicationInfo.nativeLibraryDir?.let { File(it).toPath() }
        controller = DemoController(libs, { block -> runOnUiThread { if (!isDestroyed) block() } }, this)
    }

    private fun onGenerate() {
        val maxNewTokens = intent.getIntExtra(EXTRA_MAX_NEW_TOKENS, 128)
        controller.generate(directory.text.toString(), prompt.text.toString(), dense.isChecked, maxNewTokens)
    }

    override fun onDestroy() {
        controller.close()
        super.onDestroy()
    }

    override fun showInfo(text: String) { info.text = text }
    override fun showOutput(text: String) { output.text = text }
    override fun showStats(text: String) { stats.text = text }
    override fun showMessage(text: String) {
        message.text = text
        message.visibility = if (text.isEmpty()) View.GONE else View.VISIBLE
    }
    override fun setRunning(running: Boolean) {
        generate.isEnabled = !running
        stop.isEnabled = running
    }

    companion object {
        const val DEFAULT_DIR = "/data/local/tmp/glass/artifact"
        const val EXTRA_DIR = "dev.glassexport.demo.DIR"
        const val EXTRA_MAX_NEW_TOKENS = "dev.glassexport.demo.MAX_NEW_TOKENS"
    }
}
