"""Pictures of blind-PnP problems and of each method's answer: correspondences in the image (or a
blank canvas), the 3D scene with camera frustums, and the transport plan when the method has one.

    python scripts/visualise.py --data.source colmap --data.root ../shared/data/colmap/statue_of_liberty \\
        --data.options.split_by image --split test --baseline [oracle] --indices [0,1] --out runs/vis
"""

from bpnp.cli.visualise import visualise_main

if __name__ == "__main__":
    visualise_main()
