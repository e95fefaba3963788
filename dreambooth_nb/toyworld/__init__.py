"""Chapter 06: the toy world's model, how it was pretrained, the judge that scores its pictures, and
DreamBooth's experiments measured with it. The scenes themselves are on the ground floor
(dreambooth_nb.common.scenes): every chapter draws the default subject from them."""
