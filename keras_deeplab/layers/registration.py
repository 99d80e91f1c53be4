"""The package under which keras_deeplab registers its Keras classes. Saved models name a class by it
("keras_deeplab>ASPP"), so it must never change."""
PACKAGE = "keras_deeplab"
