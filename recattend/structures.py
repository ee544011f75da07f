"""Conventions of the batch contract shared by the data pipeline, which makes the targets, and the
networks and losses, which read them. They live here so that neither side imports the other.

The angle map: every instance pixel holds the direction, quantised into :data:`NUM_ANGLE_CLASSES`
equal sectors, in which it lies as seen from its instance's centroid (the FCN pre-processor's
angle task, paper section 2, Figure 3); background pixels hold :data:`ANGLE_IGNORE`, which the
angle loss and metrics skip.
"""

NUM_ANGLE_CLASSES = 8
ANGLE_IGNORE = 255
