"""A small English text the demo tokenizer's BPE merges are learned from.

Written for edgevid: short sentences about what happens in short video clips, plus the words a chat
about a video tends to use, so the demo tokenizer splits ordinary prompts into a few dozen pieces
instead of single bytes. Anything outside it still encodes through byte fallback.
"""

DEMO_CORPUS = """\
What happens in this video? Describe the video in one sentence.
The video shows a person walking a dog along a quiet street in the morning.
A red car drives past a small house, then turns left at the corner.
Two children are playing with a ball in the park while their parents watch.
The camera slowly moves across a kitchen where someone is cooking dinner.
A cat jumps onto the table and knocks over a cup of coffee.
At the start of the clip the sky is blue; by the end it is dark and raining.
A man in a black jacket opens the door and walks into the room.
The woman is reading a book by the window, and the light changes over time.
There are three people sitting at a table, talking and laughing.
The first frame shows a green field; the last frame shows a white building.
Count the number of birds that fly across the screen.
How many cars can you see? I can see four cars and one bus.
What color is the shirt of the person on the right? It is yellow.
Summarize the main events of the video in a short list.
First, the train arrives at the station. Then the doors open. Finally, people get off.
The speaker points at a chart on the wall and explains the numbers.
Is there any text in the video? Yes, a sign says open from nine to five.
When does the ball leave the frame? It leaves the frame at about ten seconds.
The scene changes from indoors to outdoors around the middle of the clip.
A boat moves slowly on the river under a large stone bridge.
The dog runs after the ball, picks it up and brings it back.
Someone is typing on a laptop while a phone rings on the desk.
The video is short, about twenty seconds long, and has no sound.
Please answer with yes or no. Is the person smiling? Yes.
You are a helpful assistant that watches videos and answers questions about them.
The image shows a mountain with snow on the top and trees at the bottom.
Look at the image and tell me what is unusual about it.
This is a photo of a street market with fruit, bread and flowers.
The numbers on the screen go from one, two, three, four, five, six, seven, eight, nine to ten.
Frame 00:00, frame 00:01, frame 00:02 and frame 00:03 show the same object moving to the right.
The object in the center is a blue square; it moves up and then down.
The lights turn on, the music starts and the people begin to dance.
An old man feeds the birds in the square near the fountain.
The player kicks the ball and scores a goal; the crowd cheers.
A plane takes off from the airport and disappears into the clouds.
The weather is sunny and warm, with a light wind from the west.
She picks up the box, puts it on the shelf and closes the cabinet.
The teacher writes a question on the board and the students raise their hands.
Thank you! Here is a short description of what I saw in the video.
I am not sure, but it looks like the person is holding a camera.
Could you describe the colors, the people, the objects and the actions?
The video begins with a close view of a flower and ends with a wide view of a garden.
A small robot moves across the floor, stops, turns around and comes back.
Water flows over the rocks and the sound of the river fills the scene.
user
model
system
user
model
system
user
model
0 1 2 3 4 5 6 7 8 9 10 12 15 20 24 30 32 48 60 64 70 100 280
A B C D E F G H I J K L M N O P Q R S T U V W X Y Z
a, b; c: d. e! f? g (h) [i] {j} "k" 'l' m-n o/p q_r s+t u=v w*x y&z # % @ $ ~ ^ | < > `
"""
