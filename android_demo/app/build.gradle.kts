plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.glassexport.demo"
    compileSdk = 35
    defaultConfig {
        applicationId = "dev.glassexport.demo"
        minSdk = 28
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk { abiFilters += listOf("arm64-v8a") }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    implementation(project(":core"))
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.29.0")
    // Stock ExecuTorch AAR: runs .pte files, but has no glass kernels. GLASS .pte artifacts need an AAR
    // built from ExecuTorch sources with runtime_ops/src/executorch_kernel.cpp linked in (see README).
    implementation("org.pytorch:executorch-android:1.0.0")
}
