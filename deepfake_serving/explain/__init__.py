"""Explanations: where the model looked on each face (Grad-CAM on the variant's last convolutional stage,
computed with the bundle's torch weights whatever engine serves its predictions) and how faithful that
map is (ROAD). Imports torch and pytorch-grad-cam: servers import it only when an explanation is asked for."""
